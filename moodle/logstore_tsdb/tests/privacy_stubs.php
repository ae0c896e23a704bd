<?php
// This file is part of Moodle - https://moodle.org/
//
// Moodle is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.
//
// Moodle is distributed in the hope that it will be useful,
// but WITHOUT ANY WARRANTY; without even the implied warranty of
// MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
// GNU General Public License for more details.
//
// You should have received a copy of the GNU General Public License
// along with Moodle.  If not, see <https://www.gnu.org/licenses/>.

/**
 * Stand-ins for the privacy API with the real interface signatures, so that PHP itself checks that
 * classes/privacy/provider.php implements them compatibly.
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

namespace {
    /** Stand-in for Moodle's context. */
    abstract class context {
    }
}

namespace core_privacy\local\metadata {
    /** Records what a provider declares. */
    class collection {
        /** @var array name => [fields, summary] */
        public $external = [];

        /**
         * @param string $name
         * @param array $privacyfields
         * @param string $summary
         * @return collection
         */
        public function add_external_location_link($name, array $privacyfields, $summary = '') {
            $this->external[$name] = [$privacyfields, $summary];
            return $this;
        }
    }

    /** The metadata provider interface. */
    interface provider {
        /**
         * @param collection $collection
         * @return collection
         */
        public static function get_metadata(collection $collection): collection;
    }
}

namespace core_privacy\local\request {
    /** Stand-in. */
    class contextlist {
    }
    /** Stand-in. */
    class approved_contextlist {
    }
    /** Stand-in. */
    class userlist {
    }
    /** Stand-in. */
    class approved_userlist {
    }
}

namespace core_privacy\local\request\plugin {
    /** Stand-in. */
    interface subplugin_provider {
    }
}

namespace tool_log\local\privacy {
    use context;
    use core_privacy\local\request\approved_contextlist;
    use core_privacy\local\request\contextlist;

    /** tool_log's logstore provider interface (signatures as in Moodle). */
    interface logstore_provider extends \core_privacy\local\request\plugin\subplugin_provider {
        /**
         * @param contextlist $contextlist
         * @param int $userid
         * @return void
         */
        public static function add_contexts_for_userid(contextlist $contextlist, $userid);

        /**
         * @param approved_contextlist $contextlist
         * @return void
         */
        public static function export_user_data(approved_contextlist $contextlist);

        /**
         * @param context $context
         * @return void
         */
        public static function delete_data_for_all_users_in_context(context $context);

        /**
         * @param approved_contextlist $contextlist
         * @return void
         */
        public static function delete_data_for_user(approved_contextlist $contextlist);
    }

    /** tool_log's logstore userlist provider interface (signatures as in Moodle). */
    interface logstore_userlist_provider extends \core_privacy\local\request\plugin\subplugin_provider {
        /**
         * @param \core_privacy\local\request\userlist $userlist
         * @return void
         */
        public static function add_userids_for_context(\core_privacy\local\request\userlist $userlist);

        /**
         * @param \core_privacy\local\request\approved_userlist $userlist
         * @return void
         */
        public static function delete_data_for_userlist(\core_privacy\local\request\approved_userlist $userlist);
    }
}
